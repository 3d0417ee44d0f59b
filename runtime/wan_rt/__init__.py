"""wan-rt: the deploy side of wan-deploy. Runs exported Wan2.2 TI2V-5B engines without torch."""

__version__ = "0.1.0"
