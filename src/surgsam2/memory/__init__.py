"""The memory bank and its policies (fifo = SAM 2, efp = Surgical SAM 2); pure tensor code."""
