"""Drop-in replacements for the original ReSeFa scripts: same arguments, same files and names, computed our way."""
