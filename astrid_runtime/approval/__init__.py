"""Capability requests: interceptors -> policy -> budget -> human approval -> token -> audit.

`pipeline.ApprovalPipeline` runs the stages for a plugin's `cap.request`;
`policy` (the TOML rules), `token` (MAC'd, scoped, expiring approval
tokens) and `audit` (structured decision lines) are built; interceptors,
budgets and people answering "ask" slot in as `Stage`s. See docs/approval.md.
"""
