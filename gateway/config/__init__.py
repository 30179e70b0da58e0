"""Configuration: the target model (targets.py), loading and validating it (load.py, with
values.py, checks.py, problems.py, options.py), presets (presets.py) and the address policy
(addresses.py). Pure: nothing here reads Redis or the network."""
