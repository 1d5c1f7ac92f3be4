"""modelops.decode"""
