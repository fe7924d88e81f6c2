"""The DynRefer network: alignment, fusion, Q-Former and heads as plain ``nn.Module`` parts."""
