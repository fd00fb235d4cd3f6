from esfsm.cli import main

main()
