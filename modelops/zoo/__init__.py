"""The zoo: a small real model family (tokenizer, bases, SFT experts, DPO, large SFTs) trained on CPU.

Entry points: `modelops.zoo.build.build_zoo(preset, seed, out)` (cached by content hash, resumable); a build is
read with `modelops.runtime.zoo_names` (`load_manifest(folder)`, `zoo:ROLE` names); the gold reward is
`modelops.zoo.world:reward`. See docs/zoo.md.
Importing this package is cheap (no torch).
"""
