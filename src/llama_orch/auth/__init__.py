"""Minimal auth: one shared bearer token, loopback policy, identity breadcrumbs."""
