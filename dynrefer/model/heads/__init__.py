"""The three decoders on the region representation R (SPEC §1.4)."""
