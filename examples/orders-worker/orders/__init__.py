"""The walkthrough's example handler package."""
