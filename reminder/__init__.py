"""reminder: collections and repayment-reminder automation for lenders."""

__version__ = "0.1.0"
