"""modelops.eval"""
