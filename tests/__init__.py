"""Tests for restygate."""
