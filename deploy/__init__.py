"""How to run Outpost: the local development stack (deploy.local) and deployment notes."""
