"""Running causal LMs: loading (`models`), the KV-cached runner (`runner`, `kvcache`), a plain decode loop over it
(`generate`), and which folder a `zoo:ROLE` name means (`zoo_names`).

A lower layer shared by the operations (decode, zoo, eval), so that there is one way to run a model; it imports
only checkpoint, devices, errors, cache and transformers_compat. Importing this package is cheap (no torch).
"""
