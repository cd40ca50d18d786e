"""What every stage shares: user errors, starting Ray, file helpers, progress lines, configs, CLI pieces."""
