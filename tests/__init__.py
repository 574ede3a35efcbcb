"""Tests for dicomtwist (run with trial)."""
