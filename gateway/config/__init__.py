"""Configuration: presets for well-known targets (the target model and loading are still in
`gateway.targets`; DESIGN.md "Layout for the next stage" moves them here)."""
