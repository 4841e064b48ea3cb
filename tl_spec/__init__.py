"""tl_spec."""
