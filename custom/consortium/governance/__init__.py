"""Governance (issue 18 parts 1-2): the consortium's charter, what a job declares, and each hospital's own decision.

charter.py    the charter in provisioning/consortium.yaml (purposes, forbidden uses, data-sharing agreement),
              its hash and its file in every kit; the checks of a job's purpose and of a site's approvals
jobhash.py    the hash a hospital approves a job by: the app it receives and the installed package version
gate.py       the site's veto, its kit's FLARE app deployer; the server kit's check at submission
record.py     the run record's governance meta (purpose, agreement, charter hash, approvals, refusals)
"""
