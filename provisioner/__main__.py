from provisioner.cli import main

main(prog_name="provision")
