"""AWS EC2 as a fabric, one concern per module.

- :mod:`.fabric`: :class:`~.fabric.Ec2Fabric` itself: launch, discover, state, terminate.
- :mod:`.tags`: the tags ecshell writes and reads, and their conversion to and from AWS's form.
- :mod:`.errors`: boto3/botocore exceptions turned into :class:`~.errors.Ec2Error` with the AWS code and a remedy.
- :mod:`.userdata`: the cloud-init user data that delivers a locally generated host key.
- :mod:`.pins`: host keys pinned by instance id, on disk, forgotten at termination.
- :mod:`.pricing`: hourly prices of common instance types.
- :mod:`.setup`: key pair import and an SSH-only-from-here security group.
- :mod:`.images`, :mod:`.volumes`: AMIs bundled from machines, and EBS volumes.
  These three hold Ec2Fabric's methods for their concern, as mixin classes.
- :mod:`.phonehome`: the listener booted instances call.

Nothing here imports boto3 at module level: importing ecshell stays light.
"""
