"""HTTP services of the archive: twisted.web resources under one Site."""
