"""Deployments of the pipeline onto other platforms; each is an optional extra, so `serving` imports none of them."""
