"""Starting a deployment: the gated SuperLink, study submission, simulation, the demo and
certificates.

The modules, one concept each:

- ``app_gate``: Which Flower Apps the coordinator's SuperLink may start: Consortia's installed
  app only.
- ``baselines``: The baselines of a simulated study: the same study trained pooled and at each
  training site alone, scored on the same held-out sites (`consortia run --simulation
  --baselines`).
- ``certs_cli``: The consortium's keys and certificates: `consortia certs init | server | site`.
- ``demo``: `consortia demo`: a whole federation on this machine, on synthetic demo data.
- ``local_consortium``: A whole consortium's security set-up on one machine, for `consortia
  demo` and tests: the same steps a real consortium takes (CA, server certificate, one key pair
  per site, registration with the running server, each site approving the run), in one folder.
- ``simulation``: `consortia run RUN.toml --simulation SITES_DIR`: many simulated sites in one
  machine, on Flower's simulation engine (the optional `simulation` extra: Ray).
- ``submit``: Submit a study to a SuperLink as a Flower App, through Flower's own `flwr run`.
- ``superlink``: The coordinator's Flower SuperLink process, behind Consortia's gate.
- ``superlink_gate``: The coordinator's SuperLink behind a gate: sites reach the Fleet API and
  nothing else.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.server.launch.app_gate import (
        ALLOWED_FAB_FILES as ALLOWED_FAB_FILES,
    )
    from consortia.server.launch.app_gate import (
        AppRefusedError as AppRefusedError,
    )
    from consortia.server.launch.app_gate import (
        CheckedApp as CheckedApp,
    )
    from consortia.server.launch.app_gate import (
        check_fab as check_fab,
    )
    from consortia.server.launch.app_gate import (
        check_start_run as check_start_run,
    )
    from consortia.server.launch.baselines import (
        BASELINES_DIR as BASELINES_DIR,
    )
    from consortia.server.launch.baselines import (
        POOLED as POOLED,
    )
    from consortia.server.launch.baselines import (
        BaselinePlan as BaselinePlan,
    )
    from consortia.server.launch.baselines import (
        baseline_result as baseline_result,
    )
    from consortia.server.launch.baselines import (
        baseline_settings as baseline_settings,
    )
    from consortia.server.launch.baselines import (
        plan_baselines as plan_baselines,
    )
    from consortia.server.launch.baselines import (
        record_baselines as record_baselines,
    )
    from consortia.server.launch.baselines import (
        site_toml as site_toml,
    )
    from consortia.server.launch.certs_cli import (
        PASSPHRASE_ENV as PASSPHRASE_ENV,
    )
    from consortia.server.launch.certs_cli import (
        certs_app as certs_app,
    )
    from consortia.server.launch.certs_cli import (
        init_command as init_command,
    )
    from consortia.server.launch.certs_cli import (
        server_command as server_command,
    )
    from consortia.server.launch.certs_cli import (
        site_command as site_command,
    )
    from consortia.server.launch.demo import (
        DemoOptions as DemoOptions,
    )
    from consortia.server.launch.demo import (
        default_rounds as default_rounds,
    )
    from consortia.server.launch.demo import (
        demo_data_settings as demo_data_settings,
    )
    from consortia.server.launch.demo import (
        demo_run_settings as demo_run_settings,
    )
    from consortia.server.launch.demo import (
        run_demo as run_demo,
    )
    from consortia.server.launch.local_consortium import (
        LocalConsortium as LocalConsortium,
    )
    from consortia.server.launch.local_consortium import (
        SiteKeys as SiteKeys,
    )
    from consortia.server.launch.simulation import (
        run_simulation as run_simulation,
    )
    from consortia.server.launch.simulation import (
        simulation_sites as simulation_sites,
    )
    from consortia.server.launch.submit import (
        APP_COMPONENTS as APP_COMPONENTS,
    )
    from consortia.server.launch.submit import (
        submit_run as submit_run,
    )
    from consortia.server.launch.submit import (
        write_app_dir as write_app_dir,
    )
    from consortia.server.launch.superlink import (
        CONTROL_HOST as CONTROL_HOST,
    )
    from consortia.server.launch.superlink import (
        DEFAULT_CONTROL_PORT as DEFAULT_CONTROL_PORT,
    )
    from consortia.server.launch.superlink import (
        DEFAULT_FLEET_PORT as DEFAULT_FLEET_PORT,
    )
    from consortia.server.launch.superlink import (
        RUNS_DIR_ENV as RUNS_DIR_ENV,
    )
    from consortia.server.launch.superlink import (
        SuperLinkEndpoints as SuperLinkEndpoints,
    )
    from consortia.server.launch.superlink import (
        start_superlink as start_superlink,
    )
    from consortia.server.launch.superlink import (
        superlink_args as superlink_args,
    )
    from consortia.server.launch.superlink_gate import (
        API_REFUSED as API_REFUSED,
    )
    from consortia.server.launch.superlink_gate import (
        APP_REFUSED as APP_REFUSED,
    )
    from consortia.server.launch.superlink_gate import (
        APP_STARTED as APP_STARTED,
    )
    from consortia.server.launch.superlink_gate import (
        FLEET_PATHS as FLEET_PATHS,
    )
    from consortia.server.launch.superlink_gate import (
        SUPERLINK_LOG_LABEL as SUPERLINK_LOG_LABEL,
    )
    from consortia.server.launch.superlink_gate import (
        ControlGate as ControlGate,
    )
    from consortia.server.launch.superlink_gate import (
        FleetOnlyGate as FleetOnlyGate,
    )
    from consortia.server.launch.superlink_gate import (
        main as main,
    )

__all__ = [
    "ALLOWED_FAB_FILES",
    "API_REFUSED",
    "APP_COMPONENTS",
    "APP_REFUSED",
    "APP_STARTED",
    "BASELINES_DIR",
    "CONTROL_HOST",
    "DEFAULT_CONTROL_PORT",
    "DEFAULT_FLEET_PORT",
    "FLEET_PATHS",
    "PASSPHRASE_ENV",
    "POOLED",
    "RUNS_DIR_ENV",
    "SUPERLINK_LOG_LABEL",
    "AppRefusedError",
    "BaselinePlan",
    "CheckedApp",
    "ControlGate",
    "DemoOptions",
    "FleetOnlyGate",
    "LocalConsortium",
    "SiteKeys",
    "SuperLinkEndpoints",
    "baseline_result",
    "baseline_settings",
    "certs_app",
    "check_fab",
    "check_start_run",
    "default_rounds",
    "demo_data_settings",
    "demo_run_settings",
    "init_command",
    "main",
    "plan_baselines",
    "record_baselines",
    "run_demo",
    "run_simulation",
    "server_command",
    "simulation_sites",
    "site_command",
    "site_toml",
    "start_superlink",
    "submit_run",
    "superlink_args",
    "write_app_dir",
]

_EXPORTS = {
    "ALLOWED_FAB_FILES": "app_gate",
    "API_REFUSED": "superlink_gate",
    "APP_COMPONENTS": "submit",
    "APP_REFUSED": "superlink_gate",
    "APP_STARTED": "superlink_gate",
    "AppRefusedError": "app_gate",
    "BASELINES_DIR": "baselines",
    "BaselinePlan": "baselines",
    "CONTROL_HOST": "superlink",
    "CheckedApp": "app_gate",
    "ControlGate": "superlink_gate",
    "DEFAULT_CONTROL_PORT": "superlink",
    "DEFAULT_FLEET_PORT": "superlink",
    "DemoOptions": "demo",
    "FLEET_PATHS": "superlink_gate",
    "FleetOnlyGate": "superlink_gate",
    "LocalConsortium": "local_consortium",
    "PASSPHRASE_ENV": "certs_cli",
    "POOLED": "baselines",
    "RUNS_DIR_ENV": "superlink",
    "SUPERLINK_LOG_LABEL": "superlink_gate",
    "SiteKeys": "local_consortium",
    "SuperLinkEndpoints": "superlink",
    "baseline_result": "baselines",
    "baseline_settings": "baselines",
    "certs_app": "certs_cli",
    "check_fab": "app_gate",
    "check_start_run": "app_gate",
    "default_rounds": "demo",
    "demo_data_settings": "demo",
    "demo_run_settings": "demo",
    "init_command": "certs_cli",
    "main": "superlink_gate",
    "plan_baselines": "baselines",
    "record_baselines": "baselines",
    "run_demo": "demo",
    "run_simulation": "simulation",
    "server_command": "certs_cli",
    "simulation_sites": "simulation",
    "site_command": "certs_cli",
    "site_toml": "baselines",
    "start_superlink": "superlink",
    "submit_run": "submit",
    "superlink_args": "superlink",
    "write_app_dir": "submit",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
