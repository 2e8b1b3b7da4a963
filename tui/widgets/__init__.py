"""Widgets of the live debate screen. They change only in response to messages the screen receives."""
