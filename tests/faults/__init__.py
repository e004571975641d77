"""Fault suite: the running server attacked as a hostile or broken local client would."""
