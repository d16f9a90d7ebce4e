"""
What the tests share: real backends, certificates, a gateway rig, the
installed daemon, scripted Consul answers.
"""
