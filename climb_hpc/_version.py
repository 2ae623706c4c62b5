"""The package version, in a module of its own: code inside climb_hpc reads it from here, not from the
package root (whose lazy exports import the API, and so the controller)."""

__version__ = "0.1.0"
