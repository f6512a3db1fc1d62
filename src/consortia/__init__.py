"""Consortia: federated learning on medical images across hospitals.

``consortia.server`` runs at the coordinator, ``consortia.client`` at each hospital's node, and
``consortia.common`` is what both share; server and client never import each other.
"""
