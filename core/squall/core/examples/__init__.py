"""Examples of processings written as external commands."""
