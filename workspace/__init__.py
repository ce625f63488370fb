"""The Collaborative Decoding Workspace package: client, engine, policies, judge, statistics, records, forum.

Layers import only the layers above them (DESIGN.md §3): endpoints → client → engine → ... → cli.
"""
