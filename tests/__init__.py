"""Tests for restygate, and the Consul HTTP API test server they run against."""
