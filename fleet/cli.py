"""`medge fleet deploy | status | rollback | promote`: model rollout to a site's devices over
MQTT, with signed commands (docs/fleet.md). Broker options are the dashboard's; the broker
account must be the fleet account (the only one the shipped ACL lets write commands/#)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from medge.dashboard.cli import _broker_settings, broker_options
from medge.edge.fleet.commands import DEFAULT_MIN_AGREEMENT


def _link(site, broker, username, password_file, ca_file, cert_file, key_file, tls_insecure, topic_prefix,
          mqtt_version, settle=1.0):
    from medge.fleet.link import SiteLink

    settings = _broker_settings(broker, username, password_file, ca_file, cert_file, key_file, tls_insecure,
                                topic_prefix, mqtt_version)
    return SiteLink(settings, site).start(settle_s=settle)


def _operator_key(path: Path):
    """The loaded private key, so a wrong file fails before anything is sent."""
    from medge.edge.bundle import load_private_key

    return load_private_key(path)


def _say(text: str) -> None:
    click.echo(text)


site_option = click.option("--site", required=True, help="The site whose devices are commanded.")
device_option = click.option("--device", "devices", multiple=True, metavar="DEVICE",
                             help="A device to command (repeatable). Default: every online device of the site.")
key_option = click.option("--key", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True,
                          help="The operator's Ed25519 private key (PEM, `medge keys generate`); devices trust its "
                               "public key (fleet.trusted_operator_keys).")
fleet_key_option = click.option(
    "--fleet-key", "fleet_keys", multiple=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The operator's public key (PEM; repeatable): verify the signature of the site's target record. "
         "Without it the record is shown as unverified.")
timeout_option = click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=300.0,
                              show_default=True, help="Seconds each phase may take before the devices that have "
                                                      "not finished count as failed.")


@click.group("fleet")
def fleet_group():
    """Roll models out to a site's devices: signed commands over MQTT, bundle over HTTP(S).

    A deployed bundle is downloaded, checked (sha256, bundle signature), self-tested on each
    device's own runtime, optionally run in shadow, then promoted or refused; the previous
    model is kept for `rollback`. Results are decision support, not for diagnostic use.
    """


@fleet_group.command("deploy")
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@site_option
@device_option
@click.option("--canary", type=click.IntRange(min=0), default=1, show_default=True,
              help="Deploy to this many devices first; the rest only once they are all promoted (0: all at once).")
@click.option("--shadow", type=click.IntRange(min=0), default=0, show_default=True,
              help="Run the candidate beside the active model on this many real inputs before promoting (0: none).")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=DEFAULT_MIN_AGREEMENT, show_default=True,
              help="Shadow agreement needed for promotion; below it the device rolls back.")
@key_option
@click.option("--url", default=None, help="Where the devices download the archive (http(s)://...): a copy of "
                                          "`medge fleet pack BUNDLE` hosted there. Default: serve it from here.")
@click.option("--serve", default=None, metavar="HOST:PORT",
              help="Serve the archive on this address while the rollout runs (default: all interfaces, a free "
                   "port, advertised under the address this machine reaches the broker from).")
@timeout_option
@broker_options
def deploy_command(bundle, site, devices, canary, shadow, min_agreement, key, url, serve, timeout_s, **broker):
    """Deploy BUNDLE (a bundle folder or its .tar archive) to the devices of --site."""
    from medge.fleet.deploy import DeployPlan, deploy

    if url and serve:
        raise click.UsageError("give --url (hosted elsewhere) or --serve (served from here), not both")
    if url and not url.startswith(("http://", "https://")):
        raise click.UsageError(f"--url {url!r}: must be an http:// or https:// URL")
    plan = DeployPlan(bundle=bundle, key=_operator_key(key), devices=tuple(devices), canary=canary, shadow=shadow,
                      min_agreement=min_agreement, url=url, serve=serve, timeout_s=timeout_s)
    if bundle.is_dir():  # a bundle that would not load on a device fails before the broker is asked
        from medge.edge.bundle import load_bundle

        load_bundle(bundle)
    link = _link(site, **broker)
    try:
        deploy(link, plan, _say)
    finally:
        link.stop()


@fleet_group.command("pack")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
def pack_command(bundle, out):
    """Pack BUNDLE into the archive OUT (.tar) to host for `deploy --url`: the same bytes deploy packs."""
    from medge.edge.bundle import load_bundle, sha256_file
    from medge.edge.fleet.archive import pack_bundle

    loaded = load_bundle(bundle)
    try:
        pack_bundle(bundle, out)
    except OSError as error:
        raise click.ClickException(f"{out}: cannot write the archive ({error.strerror or error})") from None
    click.echo(f"{out}: {loaded.name} {loaded.version}, {out.stat().st_size} bytes, sha256 {sha256_file(out)}")


@fleet_group.command("status")
@site_option
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.option("--settle", type=click.FloatRange(min=0), default=1.5, show_default=True,
              help="Seconds to collect the devices' retained messages.")
@click.option("--check", is_flag=True,
              help="Exit 1 when a device runs another model than the site's target (or the target's signature "
                   "fails --fleet-key).")
@fleet_key_option
@broker_options
def status_command(site, as_json, settle, check, fleet_keys, **broker):
    """Each device of --site: active and candidate model, rollout state, shadow agreement, target."""
    from rich.console import Console

    from medge.edge.fleet.commands import trusted_operator_keys
    from medge.fleet.status import render, rows
    from medge.fleet.target import target_trust

    keys = trusted_operator_keys(list(fleet_keys))  # a bad key file fails before the broker is asked
    link = _link(site, settle=settle, **broker)
    try:
        devices, target = link.snapshot(), link.target
    finally:
        link.stop()
    trust = target_trust(target, keys, site)
    judged = target if trust and not trust.startswith("invalid") else None  # a forged record judges nobody
    table = rows(devices, judged)
    if as_json:
        click.echo(json.dumps({"site": site, "target": target, "target_trust": trust, "devices": table}, indent=2))
    elif not table and target is None:  # most likely a mistyped site name: say so, and fail a script
        raise click.ClickException(f"no device has reported on site {site} (nothing retained under "
                                   f"{broker['topic_prefix']}/{site}/+/status): is the site name right?")
    elif not table:
        click.echo(f"site {site}: no device has reported yet (a target record is published)")
    else:
        Console(width=200).print(render(site, table, target, trust))
    if check and judged is None and target is not None:
        raise click.ClickException(f"site {site}: the target record is {trust}")
    off = [row["device"] for row in table if row["on_target"] is False]
    if check and off:
        raise click.ClickException(f"{len(off)} device(s) do not run the site's target: {', '.join(off)}")


MANAGE_HELP = {
    "rollback": "Switch devices of --site back to their previous model (kept on each device).",
    "promote": "Promote the candidate now on devices of --site that run it in shadow.",
}


def _manage(action):
    @fleet_group.command(action, help=MANAGE_HELP[action])
    @site_option
    @device_option
    @key_option
    @timeout_option
    @broker_options
    def command(site, devices, key, timeout_s, **broker):
        from medge.fleet.manage import command_devices

        key = _operator_key(key)
        link = _link(site, **broker)
        try:
            command_devices(link, action, tuple(devices), key, timeout_s, _say)
        finally:
            link.stop()

    return command


rollback_command = _manage("rollback")
promote_command = _manage("promote")
