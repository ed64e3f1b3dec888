"""Scheduler: staged firmware rollouts, config reconcile, notifications and broker metrics."""
