"""OpenStack (libcloud) backend tests against a fake Nova and Keystone."""
