from odebench.cli import main

main()
