"""
Where instances come from: the immutable model the data path reads, and the
sources that keep it fresh (a static catalog, or Consul).
"""
