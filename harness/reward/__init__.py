"""Reward models: the ORM/PRM interface, hub PRMs, the embedded value head and its training (Math-Shepherd labels)."""
