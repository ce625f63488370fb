"""The Collaborative Decoding Workspace package: client, engine, policies, judge, statistics, records, forum.

Layers import only the layers above them (ARCHITECTURE.md “Layers”): endpoints → client → engine → ... → cli.
"""
