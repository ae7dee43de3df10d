"""A recording as read: EDF nights and their pairing, channel names and roles, stage texts and hypnograms."""
