"""Differential privacy: RDP accounting, DP-SGD at a site, and each hospital's privacy budget."""
