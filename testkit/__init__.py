"""Helpers every test suite shares: an in-process app client and problem-document checks."""
