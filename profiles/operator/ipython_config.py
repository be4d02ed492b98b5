# The operator profile: what `ecshell` starts IPython with.
#
# `ecshell` passes this file to IPython with --config, after the profile in
# <ECSHELL_HOME>/ipython/profile_operator/ (where your own settings go, and
# where IPython keeps this shell's history). Settings for ecshell itself are
# traitlets too; uncomment and edit, here or in that profile:
#
#   c.EcShell.default_fabric = "local"       # 'local', 'ec2' or 'static'
#   c.EcShell.fanout = 64                    # commands in flight at once
#   c.EcShell.connect_timeout = 10.0         # seconds
#   c.EcShell.command_timeout = None         # seconds per host; None: no limit
#   c.EcShell.progress_after = 1.0           # seconds before live progress shows
#   c.EcShell.confirm_terminate_above = 3    # machines; %terminate asks above this
#   c.EcShell.confirm_launch_above = 10      # machines; %launch asks above this
#   c.LocalFabric.max_launch = 100           # most machines one launch starts (Ec2Fabric: 20)
#   c.LocalFabric.hourly_cost = 0.0          # US dollars per machine-hour shown by %cost
#   c.Ec2Fabric.region = "eu-west-1"
#   c.StaticFabric.hosts = ["h0", "h1", "ops@10.0.0.5:2222"]

c = get_config()  # noqa: F821 (IPython provides it)

c.InteractiveShellApp.extensions = ["ecshell"]
c.InteractiveShell.banner2 = (
    "ecshell: `cluster` is your fleet. Try %launch 3, %on all hostname, %on failed,\n"
    "%cluster, %cost, %terminate all. Help: %on? (and %launch?, %put?, ...)\n"
)
