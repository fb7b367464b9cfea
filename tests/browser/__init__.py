"""Browser tests: headless Chromium through Playwright (fixtures in conftest.py)."""
