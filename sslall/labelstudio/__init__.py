"""Label Studio: push the review queue, pull answers, the SDK client, task records and a local
server helper.
"""
