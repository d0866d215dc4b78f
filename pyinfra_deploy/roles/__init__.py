"""The Ansible roles of roles/ as pyinfra deploys, one module a role (pyinfra_deploy/deploy.py
calls them in site.yml's order). Each module's `@deploy` function is the role's entry point and
calls private functions named after the role's task files (roles/<role>/tasks/*.yml), in the
order main.yml imports them; the operations they share are in pyinfra_deploy/helpers.py."""
