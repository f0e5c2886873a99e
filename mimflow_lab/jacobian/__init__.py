"""Matrix-free σmax, σmin and κ of the flow's Jacobian (the paper's Figure 5)."""
