"""`consortia demo`: a whole federation on this machine, on synthetic demo data.

A SuperLink and one SuperNode (plus executor) per site run as real processes on
127.0.0.1; the last site is held out (it never trains). Nodes are started through the
`consortia node start` command, exactly as a hospital would start one.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from consortia.common.config.privacy_settings import SamplePrivacySettings
from consortia.common.config.security_settings import SecureAggregationSettings
from consortia.common.config.settings import (
    ModelConfig,
    RunSettings,
    Task,
    TrainingSettings,
    load_site_settings,
)
from consortia.common.demo.data import DemoDataSettings, write_site_npz
from consortia.common.errors import ConsortiaError
from consortia.common.processes import (
    ManagedProcess,
    ProcessGroup,
    free_port,
    free_ports,
    process_env,
)
from consortia.server.launch.local_consortium import LocalConsortium, SiteKeys
from consortia.server.launch.submit import submit_run, write_app_dir
from consortia.server.launch.superlink import start_superlink
from consortia.server.report.progress import watch_run
from consortia.server.report.writer import REPORT_DIR, REPORT_HTML, write_report
from consortia.server.run.folder import RESULTS_FILE

__all__ = ["DemoOptions", "default_rounds", "demo_data_settings", "demo_run_settings", "run_demo"]

logger = logging.getLogger("consortia.server.launch.demo")


@dataclass(frozen=True)
class DemoOptions:
    """What `consortia demo` lets a newcomer change."""

    rounds: int = 5
    sites: int = 4
    task: Task = Task.SEGMENTATION
    output: Path = Path("runs")
    local_epochs: int = 1
    channels: tuple[int, ...] = (8, 16, 32, 64)
    # DP-SGD needs more examples per site than plain training to learn: noise per step
    # shrinks with the batch, and a site's budget with its data size.
    train_cases: int = 960
    test_cases: int = 96
    batch_size: int = 64
    dp: bool = True
    target_epsilon: float = 8.0
    secure_aggregation: bool = True
    image_size: int = 64
    seed: int = 0
    timeout_s: float = 1800.0
    holdout_sites: int = 1
    executor: str = "warm"


def default_rounds(task: Task, dp: bool) -> int:
    """Rounds when `consortia demo --rounds` is not given: 5, and 8 for segmentation
    without DP (its held-out Dice passes 0.75 from round 5 of 8 on: docs/performance.md,
    "Learning")."""
    return 8 if task is Task.SEGMENTATION and not dp else 5


def _demo_training(options: DemoOptions) -> TrainingSettings:
    """DP-SGD: Adam on large batches (noise per step shrinks with the batch). Without DP:
    4x more, smaller steps with SGD + Nesterov momentum, a polynomial rate over the whole
    run and intensity augmentation (held-out Dice 0.34 after 4 rounds instead of 0.22
    after 5 in the in-process benchmark; docs/performance.md, "Learning")."""
    if options.dp:
        return TrainingSettings(
            local_epochs=options.local_epochs, batch_size=options.batch_size, learning_rate=2e-3
        )
    return TrainingSettings(
        local_epochs=options.local_epochs,
        batch_size=max(1, options.batch_size // 4),
        optimizer="sgd",
        learning_rate=0.05,
        momentum=0.9,
        schedule="poly",
        augment=True,
        dice="batch" if options.task is Task.SEGMENTATION else "per_case",
    )


def demo_run_settings(options: DemoOptions, run_name: str) -> RunSettings:
    """A small, fast study: a 2D U-Net (segmentation) or ResNet-18 (classification)."""
    if options.task is Task.SEGMENTATION:
        model = ModelConfig(
            architecture="unet",
            channels=options.channels,
            strides=(2, 2, 2),
            num_res_units=0,
            norm_groups=4,
        )
    else:
        model = ModelConfig(
            architecture="resnet18",
            conv1_kernel=3,
            conv1_stride=2,
            no_max_pool=False,
            norm_groups=8,
        )
    return RunSettings(
        name=run_name,
        task=options.task,
        rounds=options.rounds,
        min_sites=options.sites,
        seed=options.seed,
        connect_timeout_s=120.0,
        round_timeout_s=600.0,
        model=model,
        training=_demo_training(options),
        privacy=SamplePrivacySettings(
            enabled=options.dp, target_epsilon=options.target_epsilon, max_grad_norm=1.0
        ),
        secure_aggregation=SecureAggregationSettings(
            mode="auto" if options.secure_aggregation else "off"
        ),
    )


def demo_data_settings(options: DemoOptions) -> DemoDataSettings:
    """The synthetic data of every demo site. Segmentation: every image has one to three
    lesions, so the held-out Dice measures lesion outlines under a scanner no training site
    has (the per-case Dice scores a lesion-free image with one false-positive pixel 0 and
    leaves it out when clean: that is detection, which the classification demo measures).
    Classification: half the images have lesions."""
    return DemoDataSettings(
        image_size=options.image_size,
        train_cases=options.train_cases,
        test_cases=options.test_cases,
        lesion_fraction=1.0 if options.task is Task.SEGMENTATION else 0.5,
        seed=options.seed,
    )


def _write_sites(
    workspace: Path, options: DemoOptions, superlink: str, consortium: LocalConsortium
) -> list[tuple[Path, SiteKeys]]:
    data_settings = demo_data_settings(options)
    configs = []
    for index in range(options.sites):
        role = "holdout" if index >= options.sites - options.holdout_sites else "train"
        name = f"hospital-{chr(ord('a') + index)}" if index < 26 else f"hospital-{index}"
        site_dir = workspace / "sites" / name
        site_dir.mkdir(parents=True)
        write_site_npz(site_dir / "data.npz", index, data_settings)
        keys = consortium.site_keys(name, site_dir / "keys")
        config = site_dir / "site.toml"
        config.write_text(
            "\n".join(
                [
                    "[site]",
                    f'name = "{name}"',
                    f'role = "{role}"',
                    "",
                    "[data]",
                    'path = "data.npz"',
                    'format = "npz"',
                    "",
                    "[node]",
                    f'superlink = "{superlink}"',
                    f'root_certificates = "{consortium.ca_certificate}"',
                    f'key = "{keys.private_key}"',
                    f'executor = "{options.executor}"',
                    f'state_dir = "{site_dir / "node"}"',
                    "",
                    "[privacy]",
                    f"max_epsilon = {max(10.0, 1.25 * options.target_epsilon)}",
                    "delta = 1e-5",
                    f"allow_non_private = {'false' if options.dp else 'true'}",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        configs.append((config, keys))
    return configs


def _node_process(config: Path, threads: int) -> ManagedProcess:
    args = [
        sys.executable,
        "-m",
        "consortia.common.cli",
        "node",
        "start",
        "--site-config",
        str(config),
        "--runtime-port",
        str(free_port()),
        "--num-threads",
        str(threads),
    ]
    return ManagedProcess(
        f"node {config.parent.name}", args, config.parent / "node" / "node.log", env=process_env()
    )


def _announce(options: DemoOptions, console: Console, trainers: int) -> None:
    """Tell the newcomer what the demo runs, and that its images are synthetic."""
    console.print(
        f"[bold]Consortia demo[/]: {options.sites} sites ({trainers} training, "
        f"{options.holdout_sites} held out), {options.rounds} rounds, task {options.task.value}."
    )
    if options.dp:
        console.print(
            f"Differential privacy: DP-SGD at every site, target epsilon "
            f"{options.target_epsilon:g} per site for this run (delta 1e-5); --no-dp to compare."
        )
    console.print(
        "[yellow]The images are SYNTHETIC (generated on this machine), not patient data.[/]"
    )


def _federate(
    options: DemoOptions,
    console: Console,
    settings: RunSettings,
    run_dir: Path,
    trainers: int,
) -> None:
    """Start the SuperLink and the sites' nodes, submit the run and follow it to its end."""
    workspace, output, run_name = run_dir / "workspace", run_dir.parent, run_dir.name
    port, control_port = free_ports(2)
    consortium = LocalConsortium.create(workspace / "pki", workspace / "superlink")
    configs = _write_sites(workspace, options, f"127.0.0.1:{port}", consortium)
    threads = max(1, (os.cpu_count() or 2) // trainers)
    with ProcessGroup() as group:
        try:
            endpoints = start_superlink(
                group,
                workspace / "superlink",
                output,
                port=port,
                control_port=control_port,
                security=consortium.security,
            )
            connection = consortium.connection(endpoints.control, workspace / "flwr-cli")
            for config, keys in configs:
                consortium.register(keys, endpoints.control)
                consortium.approve(load_site_settings(config), settings, by="consortia demo")
            console.print(
                f"Security: TLS with a demo CA, {options.sites} registered site keys, signed "
                "updates, runs approved at every site"
                + (", secure aggregation" if settings.secure_aggregation_for(trainers) else "")
                + f" (keys in {workspace / 'pki'})."
            )
            for config, _ in configs:
                group.start(_node_process(config, threads))
            app_dir = write_app_dir(workspace / "app", settings, run_name)
            run_id = submit_run(app_dir, connection)
            watch_run(
                run_id,
                connection,
                run_dir,
                options.rounds,
                options.task,
                console=console,
                check_alive=group.check_alive,
                timeout_s=options.timeout_s,
            )
        except KeyboardInterrupt:
            console.print("[red]interrupted: stopping every demo process[/]")
            raise


def run_demo(options: DemoOptions, console: Console) -> Path:
    """Run the whole demo federation; returns the run folder."""
    trainers = options.sites - options.holdout_sites
    if trainers < 1 or options.holdout_sites < 0:
        raise ConsortiaError(
            f"demo: {options.sites} sites with {options.holdout_sites} held out leaves no "
            "training site"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_name = f"demo-{options.task.value[:3]}-{stamp}"
    run_dir = options.output.resolve() / run_name
    workspace = run_dir / "workspace"
    workspace.mkdir(parents=True)
    settings = demo_run_settings(options, run_name)
    _announce(options, console, trainers)
    _federate(options, console, settings, run_dir, trainers)
    console.print(f"Results: {run_dir / RESULTS_FILE}\nSite data, configs and logs: {workspace}")
    report = run_dir / REPORT_DIR
    write_report(run_dir, report)
    console.print(f"Report (open in a browser): {report / REPORT_HTML}")
    return run_dir
