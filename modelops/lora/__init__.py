"""modelops.lora"""
