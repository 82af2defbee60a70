"""Accounting: usage records, HEPscore23 normalisation, APEL messages, the cost ledger and finance reports."""
