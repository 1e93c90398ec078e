"""Everything serial: the VLP/1 codec, the host link driver and the board emulator."""
