"""A hospital's node: the SuperNode, its warm executor, its audit log, connection check and
approvals.

The modules, one concept each:

- ``approve_cli``: `consortia node approve | approvals | revoke`: the runs a hospital agrees to
  take part in.
- ``audit``: The node's own audit log: one hash-chained JSON-lines file in its state folder,
  across runs (what it approved or refused, each update it sent, its privacy spending).
- ``connection_check``: Before a node starts its SuperNode: can it reach the server, over TLS,
  trusting only the consortium CA? Flower's SuperNode retries forever on a TLS mismatch; this
  check turns the mismatch into one clear message at start-up instead.
- ``ops_cli``: `consortia node check | status`: a dry run of a node, and where it stands.
- ``study_fit``: Does a study fit this site? Its privacy settings against the site's policy
  (and, at approval, the budget left in the data set's ledger), and its task and model against
  the data set's manifest.
- ``supernode``: A hospital's node: a Flower SuperNode (process isolation) plus our warm
  executor.
- ``warm_executor``: A long-lived ClientApp executor for a SuperNode started with ``--isolation
  process``.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.client.node.audit import (
        RecordedSpending as RecordedSpending,
    )
    from consortia.client.node.audit import (
        node_audit_for as node_audit_for,
    )
    from consortia.client.node.audit import (
        recorded_spending as recorded_spending,
    )
    from consortia.client.node.connection_check import (
        ConnectionCheckError as ConnectionCheckError,
    )
    from consortia.client.node.connection_check import (
        check_server_connection as check_server_connection,
    )
    from consortia.client.node.ops_cli import (
        node_check as node_check,
    )
    from consortia.client.node.ops_cli import (
        node_status as node_status,
    )
    from consortia.client.node.study_fit import (
        StudyRefusedError as StudyRefusedError,
    )
    from consortia.client.node.study_fit import (
        data_refusals as data_refusals,
    )
    from consortia.client.node.study_fit import (
        epsilon_spent as epsilon_spent,
    )
    from consortia.client.node.study_fit import (
        policy_refusals as policy_refusals,
    )
    from consortia.client.node.study_fit import (
        study_refusals as study_refusals,
    )
    from consortia.client.node.supernode import (
        default_state_dir as default_state_dir,
    )
    from consortia.client.node.supernode import (
        main as main,
    )
    from consortia.client.node.supernode import (
        run_node as run_node,
    )
    from consortia.client.node.supernode import (
        start_node_processes as start_node_processes,
    )
    from consortia.client.node.supernode import (
        supernode_args as supernode_args,
    )
    from consortia.client.node.warm_executor import (
        NUM_THREADS_ENV as NUM_THREADS_ENV,
    )
    from consortia.client.node.warm_executor import (
        WarmExecutor as WarmExecutor,
    )

__all__ = [
    "NUM_THREADS_ENV",
    "ConnectionCheckError",
    "RecordedSpending",
    "StudyRefusedError",
    "WarmExecutor",
    "check_server_connection",
    "data_refusals",
    "default_state_dir",
    "epsilon_spent",
    "main",
    "node_audit_for",
    "node_check",
    "node_status",
    "policy_refusals",
    "recorded_spending",
    "run_node",
    "start_node_processes",
    "study_refusals",
    "supernode_args",
]

_EXPORTS = {
    "ConnectionCheckError": "connection_check",
    "NUM_THREADS_ENV": "warm_executor",
    "RecordedSpending": "audit",
    "StudyRefusedError": "study_fit",
    "WarmExecutor": "warm_executor",
    "check_server_connection": "connection_check",
    "data_refusals": "study_fit",
    "default_state_dir": "supernode",
    "epsilon_spent": "study_fit",
    "main": "supernode",
    "node_audit_for": "audit",
    "node_check": "ops_cli",
    "node_status": "ops_cli",
    "policy_refusals": "study_fit",
    "recorded_spending": "audit",
    "run_node": "supernode",
    "start_node_processes": "supernode",
    "study_refusals": "study_fit",
    "supernode_args": "supernode",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
