"""Burst requests while they run: how far each has got, when it ends, and the demand still left."""
